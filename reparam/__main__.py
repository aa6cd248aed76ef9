from reparam.cli.main import entry

entry()
