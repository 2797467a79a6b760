from dalle.cli import main

raise SystemExit(main())
