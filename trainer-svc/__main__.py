from trainer_svc.app import main

main()
