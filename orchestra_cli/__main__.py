from orchestra_cli.cli.main import main

main()
