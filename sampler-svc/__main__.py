from sampler_svc.app import main

main()
