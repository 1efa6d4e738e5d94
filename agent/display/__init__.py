"""The display slice: the X screen size at run time (RandR) and the windows that follow it."""
