from wsproxy.cli import main

main()
