"""What Hangar records of what runs: machines' output files, and later metrics and log sinks."""
