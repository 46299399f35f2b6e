from control_svc.app import main

main()
