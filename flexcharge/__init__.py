"""The application: command line, demo and live view, composing daemon and simulator."""
