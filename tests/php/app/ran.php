<?php

// tests/php/test_save_path.py: a page that only says it ran (after prepend.php)
echo 'the script ran';
