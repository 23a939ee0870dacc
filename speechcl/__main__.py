import sys

from speechcl.cli import main

sys.exit(main())
