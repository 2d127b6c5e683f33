"""python -m edgetl --help"""

from edgetl.cli import main

main()
