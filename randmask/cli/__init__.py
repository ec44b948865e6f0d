"""The command line: `python -m randmask` and the `randmask` script (main), the attack/protocol commands (attacks).
May import every other layer."""
