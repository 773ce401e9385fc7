"""Where files live: paths local or in a gs:// bucket (paths), and writes that are whole or absent (files)."""
