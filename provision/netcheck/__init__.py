"""`provision net`: the network check behind the command (schedule, measuring program, verdict,
all-reduce sweep, heatmap); provision/cli/net_cmd.py drives it and prints."""
