import sys

from graph.campaign.cli import main

sys.exit(main(sys.argv[1:]))
