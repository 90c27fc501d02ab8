"""The nets, member and ensemble files, and inference: all that a served model needs (serving imports only this)."""
