from eval_svc.app import main

main()
