from spruce.cli.main import run

run()
