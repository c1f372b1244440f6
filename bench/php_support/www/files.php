<?php

declare(strict_types=1);

// PHP's own files handler, local to the node (not shared: the ceiling).
ini_set('session.save_handler', 'files');
ini_set('session.save_path', (string) getenv('BENCH_FILES_DIR'));
require __DIR__.'/page.php';
