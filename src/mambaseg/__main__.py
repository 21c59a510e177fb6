from mambaseg.cli import main

raise SystemExit(main())
