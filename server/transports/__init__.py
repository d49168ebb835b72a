"""One module per wire protocol: its whole wire format, parsing and serialising, nothing else."""
