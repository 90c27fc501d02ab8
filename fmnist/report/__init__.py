"""The pull-request report: what a change did to the metrics, params and pictures, headline first (fmnist report)."""
