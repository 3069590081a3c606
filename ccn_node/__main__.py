from ccn_node.cli import main

raise SystemExit(main())
