from runwatch.cli.main import main

raise SystemExit(main())
