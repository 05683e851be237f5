"""A child that dies before it imports anything: missing configuration, say."""

import sys

sys.stderr.write("fatal: DATABASE_URL is not set\n")
sys.exit(2)
