"""The dataset: IDX files, fetching them from mirrors, checking them, and the arrays training reads."""
