from prognetwork.cli import main

main()
