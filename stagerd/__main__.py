"""``python -m stagerd`` is the ``stagerd`` command."""

from stagerd.cli import main

main()
