"""`python -m governor`: the `dvfs-gov` command line (what the systemd unit runs, with the
interpreter that has deadline-dvfs installed, so no console-script path has to be known)."""

from governor.cli import main

if __name__ == "__main__":
    main(prog_name="dvfs-gov")
