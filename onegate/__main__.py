from onegate.command import main

main()
