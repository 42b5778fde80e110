from orthodiff.cli import main

main()
