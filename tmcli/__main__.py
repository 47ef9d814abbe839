from tmcli.cli import main

main()
