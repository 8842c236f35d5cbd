"""Django's command-line utility for the demo: ``python -m demo_site.manage <command>``."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def main() -> None:
    if not __package__:  # run as a script (python demo_site/manage.py): find the package
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo_site.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
