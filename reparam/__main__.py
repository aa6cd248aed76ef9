from reparam.cli.main import main

raise SystemExit(main())
