<?php

declare(strict_types=1);

// Health check for the balancer (--check-path /health.php): no session, no service call.
header('Content-Type: text/plain');
header('Cache-Control: no-store');
echo "ok\n";
