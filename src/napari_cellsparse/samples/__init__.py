"""Sample images with known truth and their ready sparse annotation."""
