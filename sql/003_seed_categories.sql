-- A starter set of categories; `sf categories add|update|remove` manages them afterwards.
INSERT INTO categories (name, description, thumbnail) VALUES
    ('Just Chatting', 'Hang out, talk and answer questions with chat.', '/media/categories/just-chatting.jpg'),
    ('Action Games', 'Shooters, fighters and other fast-paced games.', '/media/categories/action-games.jpg'),
    ('Strategy Games', 'RTS, 4X, auto-battlers and turn-based tactics.', '/media/categories/strategy-games.jpg'),
    ('Role-Playing Games', 'RPGs, MMOs and story-driven adventures.', '/media/categories/role-playing-games.jpg'),
    ('Sports Games', 'Football, racing and every other sports simulation.', '/media/categories/sports-games.jpg'),
    ('Indie Games', 'Small studios and hidden gems.', '/media/categories/indie-games.jpg'),
    ('Retro Games', 'Classics, speedruns and emulation.', '/media/categories/retro-games.jpg'),
    ('Music', 'Live performances, production and DJ sets.', '/media/categories/music.jpg'),
    ('Art', 'Drawing, painting, 3D and crafts.', '/media/categories/art.jpg'),
    ('Science & Technology', 'Programming, engineering, science and maker projects.', '/media/categories/science-technology.jpg'),
    ('Sports', 'Real-world sports, fitness and outdoor activities.', '/media/categories/sports.jpg'),
    ('IRL', 'Travel, cooking and everyday life.', '/media/categories/irl.jpg'),
    ('Education', 'Lessons, lectures and study sessions.', '/media/categories/education.jpg'),
    ('Esports', 'Tournaments and competitive leagues.', '/media/categories/esports.jpg')
ON CONFLICT DO NOTHING;
