"""`python -m hyperdrive` is `hd`."""

from hyperdrive.cli import main

raise SystemExit(main())
