"""The benchmark's training script: print one line at once, then sleep (until torn down)."""

import os
import socket
import sys
import time

print(f"first-line rank={os.environ.get('RANK', '?')} host={socket.gethostname()}", flush=True)
time.sleep(float(sys.argv[1]) if len(sys.argv) > 1 else 600)
