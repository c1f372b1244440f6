<?php

declare(strict_types=1);

// Document root of the example web nodes: the shop is the home page.
header('Location: /shop/index.php', true, 302);
