from generator_svc.app import main

main()
