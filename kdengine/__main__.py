from kdengine.cli import main

raise SystemExit(main())
