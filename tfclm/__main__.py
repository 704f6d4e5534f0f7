from tfclm.cli import main

main()
