from provision.cli import main

main(prog_name="provision")
