from modeld.cli._main import main

main()
