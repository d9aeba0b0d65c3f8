from lit_align.sweep.command import main

main()
