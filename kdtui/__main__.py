from kdtui.cli import main

raise SystemExit(main())
