"""The backup command: planning, uploads, deletes and the pipeline that wires them."""
