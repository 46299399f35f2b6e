from verifier_svc.app import main

main()
