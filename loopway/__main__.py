from loopway.cli import main

raise SystemExit(main())
