from raylhf.cli import main

raise SystemExit(main())
