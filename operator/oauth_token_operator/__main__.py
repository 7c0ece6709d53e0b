import sys

from oauth_token_operator.cli.main import main

sys.exit(main())
