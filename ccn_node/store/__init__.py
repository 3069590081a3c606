"""SQLite storage through apsw: schema, migrations, writer and readers, corpus queries."""
