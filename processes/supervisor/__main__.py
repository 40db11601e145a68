from processes.supervisor.cli import main

raise SystemExit(main())
